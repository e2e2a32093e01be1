"""Running a program on one input: its signature, module, demos, model and config, each of which a
request may override. Evaluation and optimization run programs through here, as /predict does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.services.programs.config import Module, PredictConfig
from app.services.programs.model import Program

if TYPE_CHECKING:
    from app.services.predict import Prediction, PredictService


class ProgramRunner:
    def __init__(self, predict: PredictService) -> None:
        self.predict = predict

    async def run(
        self,
        program: Program,
        inputs: dict[str, Any],
        *,
        module: Module | None = None,
        demos: list[dict[str, Any]] | None = None,
        model: str | None = None,
        config: PredictConfig | None = None,
        instructions: str | None = None,
        priority_route: str = "predict",
    ) -> Prediction:
        signature = program.parsed()
        if instructions:
            signature = signature.with_instructions(instructions)
        return await self.predict.predict(
            signature,
            inputs,
            module=module or program.module,
            demos=demos if demos is not None else (program.demos or None),
            model=model or program.model,
            config=program.config.merged(config),
            priority_route=priority_route,
        )
