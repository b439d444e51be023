"""The `gemel` command. `gemel link RUN` links new inputs with a trained run (its folder,
{train.out}/{llm}, with the run.json the train stage writes):

    gemel link results/smollm2-135m --text "I saw a picture of Mercury." --mention Mercury --image m.png
    gemel link results/smollm2-135m --input new.jsonl --output linked.jsonl [--on-error skip|stop] [--top N]

The first prints one JSON record; the second writes one output line per input line (blank lines
aside), flushed per batch, with a progress bar on stderr. A batch is a block of `batch size`
lines of the input file (the run's decode batch size: lines 1-8, 9-16, ... for 8), whatever else
happens, so an input's record depends only on the file, never on where a run started or stopped.
Rerun with the same --output, it skips the ids already written (an input line without `id` has its
line number as id), so a killed job continues where it stopped; a batch cut short is linked whole
again and only its missing lines written, so the result is byte-identical to an uninterrupted run.
--shard I/N links only the I-th of N contiguous ranges of whole batches (gemel.link.corpus): the N
outputs, concatenated in order, are byte-identical to one run over the whole file (`gemel corpus`
and the link_corpus Snakemake target do this for a large file; see docs/linking.md).

    gemel corpus plan|shard|status|merge ...   a sharded corpus (gemel.link.corpus)

Exit status: 0 done, 2 for an expected error (one line on stderr, no traceback): a run that no
longer matches its artifacts, a missing file, a bad input line under --on-error stop.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gemel.link.corpus import (
    PLAN,
    CorpusError,
    finish_shard,
    make_plan,
    merge,
    shard_argv,
    status,
    status_table,
    write_plan,
)
from gemel.link.corpus import __doc__ as corpus_doc

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
    many.add_argument("--shard", metavar="I/N", help="link only shard I of N (1 <= I <= N): the I-th of N "
                                                     "contiguous ranges of whole batches of the input file")
    link.add_argument("--top", type=int, default=5, help="entities per mention (default 5)")
    add_corpus(sub)
    args = ap.parse_args(argv)
    if args.command == "corpus":
        try:
            return args.func(args)
        except Stop as e:
            print(f"gemel corpus: error: {e}", file=sys.stderr)
            return 2
    single = args.text is not None or args.mention is not None or args.image is not None
    batch = args.input is not None or args.output is not None
    if single == batch:
        link.error("give either --text and --mention (and --image), or --input and --output")
    if single and (args.text is None or args.mention is None):
        link.error("--text and --mention go together")
    if batch and (args.input is None or args.output is None):
        link.error("--input and --output go together")
    if args.shard is not None:
        if not batch:
            link.error("--shard goes with --input and --output")
        try:
            args.shard = parse_shard(args.shard)
        except ValueError as e:
            link.error(str(e))
    if args.top < 1:
        link.error("--top must be at least 1")
    try:
        return link_one(args) if single else link_file(args)
    except Stop as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), 1 <= I <= N."""
    i, sep, n = text.partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit() or not 1 <= int(i) <= int(n):
        raise ValueError(f"--shard {text}: expected I/N with 1 <= I <= N, e.g. 2/8")
    return int(i), int(n)


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


def written_ids(path: Path) -> Counter[str]:
    """Ids already in an output file, with how often (a repeated input id has one record per
    line). A last line cut short (a killed write) is removed."""
    if not path.exists():
        return Counter()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    ids: Counter[str] = Counter()
    for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ids[str(json.loads(line)["id"])] += 1
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


@dataclass
class Pending:
    """One line of the batch being gathered: its entry (a NewMention or an error record), its line,
    and whether its record is written (False: already in the output, linked again only so that the
    rest of its batch is linked with the same companions as in an uninterrupted run)."""
    entry: Any
    lineno: int
    write: bool


def line_id(obj: Any, json_error: str | None, lineno: int) -> tuple[str, str | None]:
    """A line's id (its `id`, else its line number) and its error so far."""
    from gemel.link.inputs import InputError, input_id

    where = f"line {lineno}: "
    if json_error is not None:
        return str(lineno), json_error
    try:
        return input_id(obj, str(lineno), where), None
    except InputError as e:
        return str(lineno), str(e).removeprefix(where)


def link_file(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gemel.link.corpus import count_lines, shard_ranges
    from gemel.link.inputs import InputError, NewMention, error_record, parse_input

    src, dst = Path(args.input), Path(args.output)
    if not src.is_file():
        raise Stop(f"{src}: no such input file")
    if dst.resolve() == src.resolve():
        raise Stop("--output must not be the input file")
    done = written_ids(dst)
    linker = load(args.run)
    size = linker.new.decode.batch_size
    first, last = 1, None
    if args.shard is not None:
        i, n = args.shard
        first, last = shard_ranges(count_lines(src), n, size)[i - 1]
        print(f"{PROG}: shard {i}/{n}: lines {first}-{last} of {src}", file=sys.stderr)
    with open(src, "rb") as f:
        total = sum(1 for k, line in enumerate(f, start=1)
                    if first <= k and (last is None or k <= last) and line.strip())
    counts = {"linked": 0, "errors": 0, "already": 0}
    images: Counter[str] = Counter()  # per linked input: used, or why not (missing, unreadable, none given, ...)
    seen: dict[str, int] = {}  # id -> the last line that had it
    pending: list[Pending] = []
    dst.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def flush(out: TextIO) -> None:
        """Link the pending batch and write its new lines; under stop, only up to the first error."""
        todo = [p for p in pending if p.write]
        records = [] if not todo else [r for r, p in zip(linker.link_entries([p.entry for p in pending], args.top),
                                                        pending, strict=True) if p.write]
        pending.clear()
        for r, p in zip(records, todo, strict=True):  # an image error is found while linking: name its line too
            if "error" in r and not r["error"].startswith("line "):
                r["error"] = f"line {p.lineno}: {r['error']}"
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
            if last is not None and lineno > last:
                break
            rid, error = line_id(obj, json_error, lineno)
            if lineno < first:  # another shard's line: only its id counts (a repeated id is an error)
                seen[rid] = lineno
                continue
            if pending and (lineno - 1) // size != (pending[0].lineno - 1) // size:
                flush(out)  # the batches are blocks of lines: the same for any shard, any rerun
            write = done[rid] == 0
            if not write:
                done[rid] -= 1
                counts["already"] += 1
                bar.update(1)
            where = f"line {lineno}: "
            try:
                if error is not None:
                    raise InputError(where + error)
                if rid in seen:
                    raise InputError(f"{where}id {rid} is already used on line {seen[rid]}")
                entry: NewMention | dict[str, Any] = parse_input(obj, rid, where)
                if entry.image and not os.path.isabs(entry.image):  # relative to the input file
                    entry = NewMention(entry.id, entry.text, entry.mention, str(src.parent / entry.image))
            except InputError as e:
                if write and args.on_error == "stop":
                    if pending:
                        flush(out)
                    raise Stop(f"{src}: {e} ({stopped()})") from None
                entry = error_record(obj, rid, str(e), linker.new.mode)
            seen[rid] = lineno
            pending.append(Pending(entry, lineno, write))
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


# ------------------------------------------------------------------ `gemel corpus ...`


def add_corpus(sub: Any) -> None:
    corpus = sub.add_parser("corpus", help="link a large JSON-lines file in shards",
                            description=corpus_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    acts = corpus.add_subparsers(dest="action", required=True)
    p = acts.add_parser("plan", help="split an input file into shards of whole batches: DIR/plan.json")
    p.add_argument("run", help="the run folder, as for gemel link")
    p.add_argument("--input", required=True, help="the JSON-lines input, as for gemel link")
    p.add_argument("--shards", type=int, required=True, help="how many shards")
    p.add_argument("--dir", required=True, help="the shards' folder (plan.json and each shard's output)")
    p.add_argument("--top", type=int, default=5, help="entities per mention (default 5)")
    p.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="a bad input line: skip (its record holds the error; default) or stop (its shard fails)")
    p.set_defaults(func=_plan)
    s = acts.add_parser("shard", help="link one shard (resuming its output), then write its .done")
    s.add_argument("dir")
    s.add_argument("shard", type=int, help="1..N")
    s.set_defaults(func=_shard)
    st = acts.add_parser("status", help="lines linked per shard, errors, state")
    st.add_argument("dir")
    st.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until all are done")
    st.set_defaults(func=_status)
    m = acts.add_parser("merge", help="concatenate the shards in input order; write the per-shard report")
    m.add_argument("dir")
    m.add_argument("--output", required=True)
    m.add_argument("--report", help="the per-shard report (JSON); default OUTPUT's name + .report.json")
    m.set_defaults(func=_merge)


def _stop(e: Exception) -> Exception:
    return Stop(str(e))


def _plan(args: argparse.Namespace) -> int:
    if args.shards < 1 or args.top < 1:
        raise _stop(ValueError("--shards and --top must be at least 1"))
    try:
        plan = make_plan(args.run, args.input, args.shards, args.top, args.on_error)
    except FileNotFoundError as e:
        raise _stop(e) from None
    stale = write_plan(args.dir, plan)
    sizes = ", ".join(str(s["inputs"]) for s in plan["shard"])
    print(f"gemel corpus: {plan['lines']} lines of {args.input} in {args.shards} shards of whole batches of "
          f"{plan['batch_size']} lines (inputs: {sizes}) -> {Path(args.dir) / PLAN}"
          + (f"; removed {len(stale)} shard outputs of another plan" if stale else ""), file=sys.stderr)
    return 0


def _shard(args: argparse.Namespace) -> int:
    """gemel link of one shard of a plan (resuming its output), then its .done."""
    try:
        rc = main(shard_argv(args.dir, args.shard))
        if rc == 0:
            finish_shard(args.dir, args.shard)
        return rc
    except (CorpusError, FileNotFoundError) as e:
        raise _stop(e) from None


def _status(args: argparse.Namespace) -> int:
    try:
        while True:
            table = status_table(args.dir)
            print(time.strftime("%H:%M:%S ") + str(Path(args.dir)) + "\n" + table + "\n", flush=True)
            if args.watch is None or all(r["state"] == "done" for r in status(args.dir)):
                return 0
            time.sleep(args.watch)
    except FileNotFoundError as e:
        raise _stop(e) from None


def _merge(args: argparse.Namespace) -> int:
    report = args.report or f"{args.output}.report.json"
    try:
        r = merge(args.dir, args.output, report)
    except (CorpusError, FileNotFoundError) as e:
        raise _stop(e) from None
    print(f"gemel corpus: {r['inputs']} records ({r['linked']} linked, {r['errors']} errors) of {r['shards']} shards "
          f"-> {args.output}; report {report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
