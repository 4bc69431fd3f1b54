"""The obvious FastAPI + LightGBM service: the peer ``bench_model_serving`` compares
``/score`` against (parse the rows, predict, return the scores), plus the floor (a no-op
POST). Not part of tipml; run by the benchmark as

    TIPML_NAIVE_MODEL=model.txt uvicorn bench.naive_booster:app --port N
"""

from __future__ import annotations

import os

import lightgbm as lgb
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

booster = lgb.Booster(model_file=os.environ["TIPML_NAIVE_MODEL"])
app = FastAPI()


class Rows(BaseModel):
    rows: list[list[float | None]]


@app.post("/predict")
async def predict(body: Rows) -> dict[str, list[float]]:
    x = np.array([[np.nan if v is None else v for v in row] for row in body.rows], dtype=float)
    return {"scores": booster.predict(x).tolist()}


@app.post("/noop")
async def noop() -> dict[str, bool]:
    return {"ok": True}
