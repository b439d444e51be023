"""The `gemel` command. `gemel link RUN` links new inputs with a trained run (its folder,
{train.out}/{llm}, with the run.json the train stage writes):

    gemel link results/smollm2-135m --text "I saw a picture of Mercury." --mention Mercury --image m.png
    gemel link results/smollm2-135m --input new.jsonl --output linked.jsonl [--on-error skip|stop] [--top N]

The first prints one JSON record; the second writes one output line per input line (blank lines
aside), in batches of the run's decode batch size, flushed per batch, with a progress bar on
stderr. Rerun with the same --output, it skips the ids already written (an input line without
`id` has its line number as id), so a killed job continues where it stopped. Exit status: 0 done,
2 for an expected error (one line on stderr, no traceback): a run that no longer matches its
artifacts, a missing file, a bad input line under --on-error stop.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

PROG = "gemel link"


class Stop(Exception):
    """An expected error: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gemel", description="generative multimodal entity linking")
    sub = ap.add_subparsers(dest="command", required=True)
    link = sub.add_parser("link", help="link new inputs with a trained run",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    link.add_argument("run", help="the run folder, {train.out}/{llm} (holds run.json and mapper.safetensors)")
    one = link.add_argument_group("one input")
    one.add_argument("--text", help="the text the mention occurs in")
    one.add_argument("--mention", help="the mention to link")
    one.add_argument("--image", help="the text's image (a path); optional")
    many = link.add_argument_group("a file of inputs")
    many.add_argument("--input", help="JSON lines: text, mention, optional image (relative paths: from the "
                                      "input file's folder) and id (default: the line number)")
    many.add_argument("--output", help="JSON lines, one per input line; appended to, skipping ids already there")
    many.add_argument("--on-error", choices=("skip", "stop"), default="stop",
                      help="a bad input line: skip (write it with an error and go on) or stop (exit 2 after "
                           "writing the lines before it); default stop")
    link.add_argument("--top", type=int, default=5, help="entities per mention (default 5)")
    args = ap.parse_args(argv)
    single = args.text is not None or args.mention is not None or args.image is not None
    batch = args.input is not None or args.output is not None
    if single == batch:
        link.error("give either --text and --mention (and --image), or --input and --output")
    if single and (args.text is None or args.mention is None):
        link.error("--text and --mention go together")
    if batch and (args.input is None or args.output is None):
        link.error("--input and --output go together")
    if args.top < 1:
        link.error("--top must be at least 1")
    try:
        return link_one(args) if single else link_file(args)
    except Stop as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def load(run: str):
    """The run's linker, or Stop with what is wrong (import errors of the pipeline's own kinds)."""
    from gemel.errors import GemelError
    from gemel.link.linker import Linker

    t0 = time.perf_counter()
    try:
        linker = Linker.from_run(run)
    except GemelError as e:
        raise Stop(str(e)) from None
    for note in linker.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(f"{PROG}: loaded {run} in {time.perf_counter() - t0:.1f} s ({linker.new.mode} mode, "
          f"batches of {linker.new.decode.batch_size})", file=sys.stderr)
    return linker


def link_one(args: argparse.Namespace) -> int:
    from gemel.link.inputs import InputError, parse_input

    try:
        item = parse_input({"text": args.text, "mention": args.mention, "image": args.image}, "1")
    except InputError as e:
        raise Stop(str(e)) from None
    record = load(args.run).link_mentions([item], args.top)[0]
    if "error" in record:
        raise Stop(record["error"])
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return 0


def written_ids(path: Path) -> set[str]:
    """Ids already in an output file. A last line cut short (a killed write) is removed."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    ids = set()
    for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ids.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise Stop(f"{path}: line {n} is not a gemel link output record: not appending to it") from None
    return ids


def read_inputs(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed object or None, JSON error or None) per non-blank line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line.rstrip("\r\n")), None
            except json.JSONDecodeError as e:
                yield lineno, None, f"malformed JSON: {e.msg} (column {e.colno})"


def link_file(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gemel.link.inputs import InputError, NewMention, error_record, input_id, parse_input

    src, dst = Path(args.input), Path(args.output)
    if not src.is_file():
        raise Stop(f"{src}: no such input file")
    if dst.resolve() == src.resolve():
        raise Stop("--output must not be the input file")
    done = written_ids(dst)
    linker = load(args.run)
    size = linker.new.decode.batch_size
    with open(src, "rb") as f:
        total = sum(1 for line in f if line.strip())
    counts = {"linked": 0, "errors": 0, "already": 0}
    images: Counter[str] = Counter()  # per linked input: used, or why not (missing, unreadable, none given, ...)
    seen: dict[str, int] = {}
    pending: list[NewMention | dict[str, Any]] = []
    dst.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def flush(out: TextIO) -> None:
        """Link the pending batch and write it; under stop, only up to its first error."""
        records = linker.link_entries(pending, args.top)
        pending.clear()
        for r in records:  # an image error is found while linking: name its line too
            if "error" in r and not r["error"].startswith("line "):
                r["error"] = f"line {seen[r['id']]}: {r['error']}"
        bad = next((i for i, r in enumerate(records) if "error" in r), None)
        keep = records if bad is None or args.on_error == "skip" else records[:bad]
        for r in keep:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
            counts["errors" if "error" in r else "linked"] += 1
            if "error" not in r:
                images["used" if r["image_used"] else r["image_reason"]] += 1
        out.flush()
        os.fsync(out.fileno())
        bar.update(len(keep))
        if len(keep) < len(records):
            raise Stop(f"{src}: {records[bad]['error']} ({stopped()})")

    def stopped() -> str:
        return (f"stopped: {counts['linked']} linked into {dst}; fix the line and rerun with the same "
                f"--output to continue, or use --on-error skip")

    with open(dst, "a", encoding="utf-8") as out, tqdm(total=total, desc="link", unit="mention",
                                                       file=sys.stderr) as bar:
        for lineno, obj, json_error in read_inputs(src):
            where = f"line {lineno}: "
            try:
                rid = input_id(obj, str(lineno), where) if json_error is None else str(lineno)
            except InputError as e:
                rid, json_error = str(lineno), str(e).removeprefix(where)
            if rid in done:
                counts["already"] += 1
                bar.update(1)
                continue
            try:
                if json_error is not None:
                    raise InputError(where + json_error)
                if rid in seen:
                    raise InputError(f"{where}id {rid} is already used on line {seen[rid]}")
                entry: NewMention | dict[str, Any] = parse_input(obj, rid, where)
                if entry.image and not os.path.isabs(entry.image):  # relative to the input file
                    entry = NewMention(entry.id, entry.text, entry.mention, str(src.parent / entry.image))
            except InputError as e:
                if args.on_error == "stop":
                    if pending:
                        flush(out)
                    raise Stop(f"{src}: {e} ({stopped()})") from None
                entry = error_record(obj, rid, str(e), linker.new.mode)
            seen[rid] = lineno
            pending.append(entry)
            if sum(isinstance(e, NewMention) for e in pending) == size:
                flush(out)
        if pending:
            flush(out)
    seconds = time.perf_counter() - t0
    rate = f", {counts['linked'] / seconds:.2f} mentions/s" if counts["linked"] else ""
    print(f"{PROG}: {counts['linked']} linked, {counts['errors']} errors, {counts['already']} already in "
          f"{dst} ({seconds:.1f} s{rate}); images: {image_counts(images)}", file=sys.stderr)
    named = images["used"] + images["missing"] + images["unreadable"]
    if named and images["missing"] * 2 > named:  # a batch that silently went text-only
        print(f"{PROG}: warning: {images['missing']} of {named} images not found: relative image paths are "
              f"resolved from the input file's folder, {src.parent.resolve()}", file=sys.stderr)
    return 0


def image_counts(images: Counter[str]) -> str:
    """'3 used, 1 missing, 0 unreadable, 2 none given' (and any other reason, e.g. a text-only run)."""
    order = ["used", "missing", "unreadable", "none given"]
    return ", ".join(f"{images[k]} {k}" for k in order + sorted(set(images) - set(order)))


if __name__ == "__main__":
    sys.exit(main())
