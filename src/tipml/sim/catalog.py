"""A curated tip catalog for the synthetic app: 10 tips in each of 7 categories."""

from __future__ import annotations

from dataclasses import dataclass

from tipml.features.profile_schema import CATEGORIES


@dataclass(frozen=True)
class Tip:
    tip_id: str
    category: str
    text: str
    tags: tuple[str, ...] = ()


_TEXTS: dict[str, tuple[str, ...]] = {
    "sleep": (
        "Put your phone in another room thirty minutes before bed.",
        "Keep your bedroom cool, dark and quiet tonight.",
        "Go to bed at the same time as yesterday.",
        "Skip caffeine after 2 pm today.",
        "Write tomorrow's to-do list before you turn off the light.",
        "Dim the lights an hour before bedtime.",
        "Get ten minutes of daylight soon after waking up.",
        "Try a slow 4-7-8 breathing round in bed.",
        "Avoid a heavy meal in the two hours before sleep.",
        "Read a paper book instead of scrolling tonight.",
    ),
    "focus": (
        "Pick one task and work on it for 25 minutes without switching.",
        "Silence notifications for your next work block.",
        "Close every browser tab you do not need right now.",
        "Write down the single most important task for today.",
        "Put your phone face down and out of reach while you work.",
        "Do your hardest task first, before email.",
        "Take a five-minute break after each focused block.",
        "Clear your desk of everything but what this task needs.",
        "Batch your messages into two fixed times today.",
        "Decide what done looks like before you start.",
    ),
    "movement": (
        "Take a brisk ten-minute walk after lunch.",
        "Stand up and stretch for two minutes every hour.",
        "Take the stairs instead of the lift today.",
        "Do ten squats while the kettle boils.",
        "Walk while you take your next phone call.",
        "Roll your shoulders and neck slowly five times.",
        "Park or get off one stop further away.",
        "Try a five-minute mobility routine this morning.",
        "Dance to one favourite song.",
        "Go for a short walk before dinner.",
    ),
    "mindfulness": (
        "Take three slow breaths before opening your next app.",
        "Notice five things you can see around you right now.",
        "Eat the first three bites of your next meal slowly.",
        "Spend two minutes sitting quietly with your eyes closed.",
        "Name one feeling you have right now, without judging it.",
        "Do a one-minute body scan from head to toe.",
        "Listen to the sounds around you for sixty seconds.",
        "Pause and feel your feet on the floor.",
        "Write down three things you are grateful for.",
        "Walk for five minutes paying attention to each step.",
    ),
    "nutrition": (
        "Drink a glass of water before each meal today.",
        "Add one vegetable to your next meal.",
        "Keep a piece of fruit on your desk for the afternoon.",
        "Swap one sugary drink for water or tea today.",
        "Eat breakfast sitting down, without a screen.",
        "Plan tomorrow's lunch tonight.",
        "Have a handful of nuts instead of a snack bar.",
        "Eat slowly enough to put your fork down between bites.",
        "Refill your water bottle every time it is empty.",
        "Cook one simple meal at home this week.",
    ),
    "stress": (
        "Breathe out longer than you breathe in, five times.",
        "Write down what is worrying you and one small next step.",
        "Step outside for two minutes of fresh air.",
        "Unclench your jaw and drop your shoulders.",
        "Say no to one thing that is not essential today.",
        "Take a short break away from screens.",
        "Tense and release each muscle group, from feet to face.",
        "Put on a calming song and just listen.",
        "List three things that went well today.",
        "Give yourself ten minutes with nothing scheduled.",
    ),
    "social": (
        "Send a kind message to a friend you have not spoken to lately.",
        "Call someone instead of texting today.",
        "Ask a colleague how their week is really going.",
        "Thank someone for something specific they did.",
        "Plan a short walk with a friend this week.",
        "Share a meal with someone without phones on the table.",
        "Reply to a message you have been putting off.",
        "Compliment someone sincerely today.",
        "Join a conversation you would usually skip.",
        "Write a short note to someone you appreciate.",
    ),
}

_TAGS = ("morning", "evening", "quick", "indoor", "outdoor")

CATALOG: tuple[Tip, ...] = tuple(
    Tip(f"{cat}-{i:03d}", cat, text, (_TAGS[i % len(_TAGS)],))
    for cat in CATEGORIES
    for i, text in enumerate(_TEXTS[cat])
)
BY_ID: dict[str, Tip] = {t.tip_id: t for t in CATALOG}
