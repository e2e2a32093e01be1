"""POST /optimize (placeholder, filled in below)."""

from fastapi import APIRouter

router = APIRouter(tags=["optimize"])
