"""`ecgbatch chat RECORD`: a multi-turn chat about one recording in the terminal, streamed from
vLLM's async engine (ecgbatch.serving.async_engine, the engine `serve` uses). The history stays in
the prompt (ecgbatch.llava.prompting: Vicuna v1 or the LM's chat template), so a turn here and
the same conversation sent to `serve` get identical token ids.

Commands at the prompt: /plot [FILE.png] (the ECG in the terminal, and the standard 12-lead plot
to FILE), /reset (forget the conversation), /save FILE (the conversation as JSON), /quit.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ecgbatch.commands.common import VERBOSE_HELP, fail
from ecgbatch.llava.contradictions import contradictions
from ecgbatch.llava.errors import EcgLlavaError
from ecgbatch.llava.grounding import Grounding, finding_text, ground_conversation
from ecgbatch.models import DEFAULT_LLAVA, llava_model
from ecgbatch.quiet import set_verbosity

HELP = "commands: /plot [FILE.png]  /reset  /save FILE.json  /quit   (anything else is a question)"
BLOCKS = " ▁▂▃▄▅▆▇█"


def text_plot(rec, lead: str = "II", width: int = 72, rows: int = 6) -> str:
    """A few lines of block characters showing one lead (the rhythm strip), for a terminal."""
    names = list(rec.leads)
    i = names.index(lead) if lead in names else 0
    x = np.nan_to_num(np.asarray(rec.signal[i], dtype=np.float64))
    cols = np.array_split(x, min(width, max(1, x.size)))
    hi, lo = np.array([c.max() for c in cols]), np.array([c.min() for c in cols])
    top, bot = float(hi.max()), float(lo.min())
    span = (top - bot) or 1.0
    levels = rows * (len(BLOCKS) - 1)
    h = np.round((hi - bot) / span * levels).astype(int)
    lines = []
    for r in range(rows - 1, -1, -1):
        fill = np.clip(h - r * (len(BLOCKS) - 1), 0, len(BLOCKS) - 1)
        lines.append("".join(BLOCKS[f] for f in fill))
    return f"lead {names[i]} ({x.size / rec.fs:.1f} s, {bot:.2f} to {top:.2f} {rec.units})\n" + "\n".join(lines)


def summary_line(s: dict) -> str:
    extra = "".join(f", {k} {s[k]}" for k in ("age", "sex") if k in s)
    dx = f"\n  labels: {s['dx_names']}" if s.get("dx_names") else ""
    return f"{s['name']}: {len(s['leads'])} leads ({' '.join(s['leads'])}), {s['fs']:g} Hz, {s['duration_s']} s{extra}{dx}"


class ChatSession:
    """One conversation about one ECG; the terminal loop is ``run``."""

    def __init__(self, engine, record, name: str, ecg: np.ndarray, model: str, max_tokens: int, out=sys.stdout,
                 grounding: Grounding | None = None, grounded: bool = False):
        self.engine, self.record, self.name, self.ecg = engine, record, name, ecg
        self.model, self.max_tokens, self.out = model, max_tokens, out
        self.grounding, self.grounded = grounding or Grounding(""), grounded
        self.history: list[tuple[str, str]] = []

    def prompt_ids(self, question: str) -> list[int]:
        """The turn's prompt: the history, and the grounding's lines before the first question
        when grounded (once per conversation, as the server builds it)."""
        history = self.history
        if self.grounded:
            question, history = ground_conversation(self.grounding, question, history)
        return self.engine.prompt_ids(question, history)

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    async def answer(self, question: str) -> str:
        from ecgbatch.serving.chat_request import SamplingRequest

        ids = self.prompt_ids(question)
        parts = []
        async for d in self.engine.stream(self.ecg, ids, SamplingRequest(max_tokens=self.max_tokens), self.model):
            parts.append(d.text)
            self.say(d.text, end="")
            if d.finish_reason == "length":
                self.say(f"\n[stopped at {self.max_tokens} tokens]", end="")
        self.say()
        text = "".join(parts).strip()
        for c in contradictions(text, self.grounding):
            self.say(f"[contradiction: {c.statement!r}: {c.reason}]")
        self.history.append((question, text))
        return text

    def command(self, line: str) -> bool:
        """Handle a /command; False ends the chat."""
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        if cmd in ("/quit", "/exit"):
            return False
        if cmd == "/reset":
            self.history.clear()
            self.say("(conversation cleared)")
        elif cmd == "/plot":
            self.say(text_plot(self.record))
            if arg:
                from ecgbatch.signal.plot import plot_ecg

                self.say(f"(12-lead plot written to {plot_ecg(self.record, Path(arg))})")
        elif cmd == "/save":
            if not arg:
                self.say("usage: /save FILE.json")
            else:
                self.save(Path(arg))
        else:
            self.say(HELP)
        return True

    def save(self, path: Path) -> None:
        from ecgbatch.pipelines.workspace import atomic_write_json

        turns = [{"role": r, "content": t} for q, a in self.history for r, t in (("user", q), ("assistant", a))]
        try:
            atomic_write_json({"record": self.name, "model": self.model, "grounded": self.grounded,
                               "findings": [f.to_dict() for f in self.grounding.findings], "messages": turns}, path)
            self.say(f"(conversation saved to {path})")
        except OSError as exc:
            self.say(f"error: cannot write {path}: {exc.strerror}")

    async def run(self, read_line) -> None:
        found = "; ".join(finding_text(f.to_dict()) for f in self.grounding.findings) or "none"
        self.say(f"findings{' (stated before the first question)' if self.grounded else ''}: {found}")
        self.say(HELP)
        while True:
            self.say("> ", end="")
            line = await asyncio.to_thread(read_line)
            if line is None:                       # end of input
                self.say()
                return
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
                continue
            try:
                await self.answer(line)
            except ValueError as exc:              # e.g. the conversation outgrew the context
                self.say(f"\nerror: {exc} (use /reset to start over)")


def _read_line():
    line = sys.stdin.readline()
    return line if line else None


def chat_cmd(
    record: str = typer.Argument(..., help="an ECG record (any format ecgbatch reads)"),
    model: str = typer.Option(DEFAULT_LLAVA, "--model", "-m", help="ECG-LLaVA model folder or zoo name"),
    lora: Optional[Path] = typer.Option(None, "--lora", help="peft LoRA adapter for the model's language model "
                                        "[default: the model's own (its lora/), if it has one]"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="most new tokens per answer"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float32 on CPU, bfloat16 on GPU), "
                                 "float32, bfloat16 or float16"),
    grounded: Optional[bool] = typer.Option(None, "--grounded/--no-grounded", help="state what ecgbatch "
                                            "measured and its probes found before the first question "
                                            "[default: the model's config, prompt.grounded]"),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Chat about RECORD with an ECG-LLaVA model: summary and plot first, then questions."""
    set_verbosity(verbose)
    from ecgbatch.serving.engine import engine_env

    engine_env()
    from ecgbatch.encoders.checkpoint import CheckpointError
    from ecgbatch.io import read_record
    from ecgbatch.io.errors import EcgReadError
    from ecgbatch.llava.grounding import ground_inputs, grounds_labeller
    from ecgbatch.llava.inputs import read_for_model
    from ecgbatch.serving.folder import check_adapter, check_model_folder
    from ecgbatch.serving.server_upload import summary

    try:
        folder, lora = llava_model(model, lora, log=lambda m: typer.echo(m, err=True))  # no --lora: its own
        config = check_model_folder(folder)
        if lora is not None:
            check_adapter(lora, config)
    except (EcgLlavaError, CheckpointError) as exc:
        fail(str(exc))
    measured: list = []
    ok, failed = read_for_model([record], config, measured)
    if failed:
        fail(f"{record}: {failed[0][1]}")
    grounding = ground_inputs(measured, [ok[0][1]], grounds_labeller(model), config.grounding_wording)[0]
    use = config.grounded_prompt if grounded is None else grounded
    try:
        rec = read_record(record)
    except EcgReadError as exc:     # read_for_model just read it: only a file changing under us
        fail(f"{record}: {exc}")
    typer.echo(summary_line(summary(rec, record)))
    typer.echo(text_plot(rec))
    asyncio.run(_chat(folder, Path(model).name, lora, rec, record, ok[0][1], max_tokens, dtype, grounding, use))


async def _chat(folder, model_name, lora, rec, name, ecg, max_tokens, dtype, grounding=None, grounded=False):
    from ecgbatch.serving.async_engine import AsyncEcgLlava

    typer.echo(f"(starting {model_name}{' with adapter ' + str(lora) if lora else ''}...)", err=True)
    engine = AsyncEcgLlava.start(folder, served_name=model_name, lora=lora, dtype=dtype)
    try:
        await ChatSession(engine, rec, name, ecg, model_name, max_tokens, grounding=grounding,
                          grounded=grounded).run(_read_line)
    finally:
        engine.shutdown()


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)
