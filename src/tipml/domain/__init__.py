"""The domain: the vocabulary every other room of tipml reads.

Event models and their validity rule (``events``), the key-value record codec (``records``),
the user fold with its feature definitions (``users``), the tip aggregates with theirs
(``tips``), the reward table (``rewards``) and how user text is made safe (``text``). Pure:
no I/O, and nothing here imports another tipml package (``tipml.errors``, the error root,
aside). ``events/`` is transport only; ``features/``, ``experiments/``, the archiver and the
offline builder import from here, and nothing imports upward.
"""
