"""Mutation check: small bugs put into the code every reported figure passes through, one at a
time, and whether the tests that cover that code catch each one.

    python benchmarks/mutation.py [--workdir DIR] [--only metrics,efficientad] [--report]
        [--record benchmarks/mutation_results.json]

Targets (module: the tests run against each of its mutants) are ``TARGETS`` below: the metrics,
every method and the ONNX translator. For each, mutmut 2 (``pip install -e '.[mutation]'``) writes
one mutant at a time into a copy of the tracked tree under ``--workdir`` (default
``~/.cache/kdad_jax/mutation``), runs the target's tests in a fresh process and records whether
they fail (killed), pass (survived) or run past mutmut's timeout. Results are kept in the copy's
``.mutmut-cache``: an interrupted run resumes where it stopped, a killed mutant stays killed, and
a survivor is tried again once the tests change. The copy is refreshed from the working tree on
every run; ``--report`` only reads the cache.

Prints one JSON object: per target the mutants tried, killed, survived and timed out, the kill
rate, and each survivor's line, original and mutated line, and its equivalence reason when
``benchmarks/mutation_equivalent.json`` gives one (a survivor that changes nothing a caller can
observe); every other survivor needs a test. ``--record FILE`` keeps each finished target's
result with a sha256 of its file and tests, and skips a target whose digest is unchanged: a
workdir need not outlive a session, the record is committed. It takes hours on 2 cores (every
mutant is a pytest process that imports JAX; the processes share JAX's compilation cache): run it
per target with ``--only``.

Why mutmut 2 and not 3: mutmut 3 runs each mutant's tests in a ``fork`` of a process that has
already imported the code under test, and a process that has used JAX cannot be forked safely
(JAX warns that its threads make ``os.fork()`` deadlock); mutmut 2 starts each test run as a new
process.
"""

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TARGETS = {
    "metrics": ("kdad_jax/evaluation/metrics.py", ["tests/test_metrics.py", "tests/test_spro.py"]),
    "efficientad": ("kdad_jax/methods/efficientad.py", ["tests/test_efficientad.py"]),
    "stfpm": ("kdad_jax/methods/stfpm.py", ["tests/test_stfpm.py"]),
    "dskd": ("kdad_jax/methods/dskd.py", ["tests/test_dskd_mixed.py"]),
    "mixed": ("kdad_jax/methods/mixed.py", ["tests/test_dskd_mixed.py"]),
    "students": ("kdad_jax/methods/students.py", ["tests/test_students.py"]),
    "teacher_pretraining": ("kdad_jax/methods/teacher_pretraining.py", ["tests/test_pretrain.py"]),
    "patch_teacher_pretraining": ("kdad_jax/methods/patch_teacher_pretraining.py",
                                  ["tests/test_students.py"]),
    "methods_base": ("kdad_jax/methods/base.py", ["tests/test_train.py", "tests/test_stacking.py"]),
    "onnx_export": ("kdad_jax/serve/onnx_export.py", ["tests/test_onnx.py"]),
}

EQUIVALENT = os.path.join(PROJECT, "benchmarks", "mutation_equivalent.json")


def copy_tree(source: str, destination: str) -> None:
    """The tracked and untracked-but-not-ignored files of ``source`` into ``destination``, which
    keeps its ``.mutmut-cache`` (mutmut judges a cached mutant again when the file or tests changed)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=source, capture_output=True, check=True).stdout.split(b"\0")
    for name in (n.decode() for n in listed if n):
        origin = os.path.join(source, name)
        if not os.path.isfile(origin):
            continue
        target = os.path.join(destination, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(origin, target)


def parse_target(spec: str) -> tuple:
    name, _, rest = spec.partition("=")
    path, _, tests = rest.partition(":")
    if not (name and path and tests):
        raise SystemExit(f"mutation: --target {spec!r}: expected NAME=PATH:TEST[,TEST]")
    return name, (path, tests.split(","))


def runner(tests: list[str]) -> str:
    """The test command for one mutant: stop at the first failure, no cache writes. mutmut 2 reads
    only exit status 1 as "the tests failed"; pytest exits 2 when a mutant cannot even be imported
    (a mutation that is a syntax error), which mutmut would count as a survivor, so every failing
    status becomes 1."""
    arguments = ["-x", "-q", "-p", "no:cacheprovider", *tests]
    code = f"import sys, pytest; sys.exit(1 if pytest.main({arguments!r}) else 0)"
    return shlex.join([sys.executable, "-c", code])


def mutmut(tree: str, *args: str) -> subprocess.CompletedProcess:
    """Runs mutmut in ``tree``. The mutants' test processes share JAX's persistent compilation
    cache beside the tree: a mutant changes few of the programs a test file compiles, and the rest
    load from the cache (test_efficientad.py: 30 s cold, 13 s warm); a changed program has a new
    key, so a mutant never runs a stale compilation."""
    environment = {**os.environ, "PYTHONPATH": tree,  # the copy's kdad_jax, not the installed one
                   "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(tree), "jax_cache"),
                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                   "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
                   # the real-data tests read the data beside this checkout, not beside the copy
                   "KDAD_SHARED_DATA": os.environ.get(
                       "KDAD_SHARED_DATA", os.path.join(os.path.dirname(PROJECT), "shared", "data"))}
    return subprocess.run([shutil.which("mutmut") or "mutmut", *args], cwd=tree, env=environment,
                          capture_output=True, text=True)


def run_target(tree: str, path: str, tests: list[str]) -> None:
    done = mutmut(tree, "run", "--paths-to-mutate", path, "--runner", runner(tests),
                  "--tests-dir", "tests", "--no-progress")
    if done.returncode & 1:  # bit 0: a fatal error (e.g. the tests fail without a mutant)
        raise SystemExit(f"mutation: {path}: mutmut failed: {(done.stdout + done.stderr)[-800:]}")


def export_cache(tree: str, path: str) -> None:
    """mutmut's verdicts as JSON: per mutated file its lines as they were judged and each mutant's
    (line number, index, status, tests hash). A later session seeds a fresh workdir from it; mutmut
    maps the old lines onto the file as it is then (a diff), so a killed mutant on a line that did
    not change stays killed, a survivor is tried again once the tests changed, and only mutants of
    changed lines are new."""
    database = os.path.join(tree, ".mutmut-cache")
    if not os.path.exists(database):
        return
    with contextlib.closing(sqlite3.connect(database)) as db:
        files = {}
        for file_id, name, digest in db.execute("SELECT id, filename, hash FROM SourceFile ORDER BY filename"):
            lines = [text for text, in db.execute(
                "SELECT line FROM Line WHERE sourcefile = ? ORDER BY line_number", (file_id,))]
            mutants = [list(row) for row in db.execute(
                'SELECT l.line_number, m."index", m.status, m.tested_against_hash FROM Mutant m '
                "JOIN Line l ON m.line = l.id WHERE l.sourcefile = ? ORDER BY l.line_number, m.\"index\"",
                (file_id,))]
            files[name] = {"hash": digest, "lines": lines, "mutants": mutants}
    kept = {}
    if os.path.exists(path):  # files this workdir never saw keep their verdicts
        with open(path, encoding="utf-8") as f:
            kept = json.load(f)["files"]
    write_json(path, {"mutmut_cache_version": 4, "files": {**kept, **files}})


def seed_cache(tree: str, path: str) -> None:
    """A fresh workdir's mutmut cache filled from ``export_cache``'s JSON (nothing when the
    workdir already has a cache or there is no JSON)."""
    database = os.path.join(tree, ".mutmut-cache")
    if os.path.exists(database) or not path or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    mutmut(tree, "results")  # mutmut creates its tables (and its version row) in the tree
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        for name, entry in saved["files"].items():
            file_id = db.execute("INSERT INTO SourceFile (filename, hash) VALUES (?, ?)",
                                 (name, entry["hash"])).lastrowid
            line_ids = [db.execute("INSERT INTO Line (sourcefile, line, line_number) VALUES (?, ?, ?)",
                                   (file_id, text, number)).lastrowid
                        for number, text in enumerate(entry["lines"])]
            db.executemany('INSERT INTO Mutant (line, "index", status, tested_against_hash) VALUES (?, ?, ?, ?)',
                           [(line_ids[number], index, status, tests_hash or "")
                            for number, index, status, tests_hash in entry["mutants"]])


def restore_interrupted(tree: str, paths: list[str]) -> None:
    """An interrupted ``mutmut run`` leaves its current mutant in the file and the original beside
    it as ``.bak``; the report reads each mutant's change against the original, so put it back."""
    for path in paths:
        original = os.path.join(tree, path + ".bak")
        if os.path.exists(original):
            os.replace(original, os.path.join(tree, path))


def judged(tree: str) -> dict:
    """{file: [{"line", "status", "change"}]} for every mutant mutmut knows, from its JUnit XML
    report (its documented output): a failure is a survivor, an error a timeout, skipped not yet
    run; a mutant the tests failed on, quickly or slowly, is killed."""
    report = mutmut(tree, "junitxml", "--untested-policy", "skipped")
    if report.returncode != 0 or "<testsuites" not in report.stdout:
        if not os.path.exists(os.path.join(tree, ".mutmut-cache")):
            return {}
        raise SystemExit(f"mutation: mutmut junitxml failed: {report.stderr.strip().splitlines()[-1:]}")
    by_file: dict = {}
    for case in ElementTree.fromstring(report.stdout).iter("testcase"):
        status, change = "killed", None
        for tag, name in (("failure", "survived"), ("error", "timeout"), ("skipped", "untested")):
            found = case.find(tag)
            if found is not None:
                status, change = name, found.text
        by_file.setdefault(case.get("file"), []).append(
            {"line": int(case.get("line")), "status": status, "change": change})
    return by_file


def changed_lines(diff: str) -> tuple:
    """(original line, mutated line), stripped, from a mutant's one-line unified diff."""
    body = [line for line in (diff or "").splitlines() if not line.startswith(("---", "+++"))]
    removed = [line[1:].strip() for line in body if line.startswith("-")]
    added = [line[1:].strip() for line in body if line.startswith("+")]
    return (removed[0] if removed else "", added[0] if added else "")


def equivalence_reasons(path: str = EQUIVALENT) -> dict:
    """{(file, original line, mutated line): reason} for survivors that change nothing a caller can
    observe (each with its one-line reason), from ``benchmarks/mutation_equivalent.json``."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return {(e["path"], e["from"], e["to"]): e["reason"] for e in json.load(f)}


def summary(path: str, mutants: list[dict], reasons: dict) -> dict:
    counts = {status: sum(m["status"] == status for m in mutants)
              for status in ("killed", "survived", "timeout", "untested")}
    tried = len(mutants) - counts["untested"]
    survivors = []
    for m in mutants:
        if m["status"] in ("survived", "timeout"):
            before, after = changed_lines(m["change"])
            survivors.append({"line": m["line"], "status": m["status"], "from": before, "to": after,
                              "equivalent": reasons.get((path, before, after))})
    explained = sum(s["equivalent"] is not None for s in survivors)
    return {"tried": tried, **counts,
            "kill_rate": round(counts["killed"] / tried, 4) if tried else None,
            "equivalent": explained, "unexplained_survivors": len(survivors) - explained,
            "survivors": survivors}


def sources_digest(project: str, path: str, tests: list[str]) -> str:
    """sha256 over the mutated file and its tests: a recorded result holds while this is unchanged."""
    digest = hashlib.sha256()
    for name in [path, *tests]:
        with open(os.path.join(project, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()


def recorded(path: str) -> dict:
    if not path or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("targets", {})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/kdad_jax/mutation"))
    parser.add_argument("--only", default="", help="comma-separated targets: " + ",".join(TARGETS))
    parser.add_argument("--report", action="store_true", help="read the cache; run nothing")
    parser.add_argument("--project", default=PROJECT, help="a git checkout to mutate (default: this one)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=PATH:TEST[,TEST]",
                        help="mutate PATH against TEST files instead of the built-in targets")
    parser.add_argument("--record", default="", metavar="FILE",
                        help="keep each finished target's result in FILE (JSON); a target whose "
                             "file and tests are unchanged since it was recorded is not run again")
    parser.add_argument("--cache", default="", metavar="FILE",
                        help="mutmut's verdicts as JSON: seeds a fresh workdir, written after a run "
                             "(so a later session re-judges only mutants of changed lines)")
    parser.add_argument("--equivalent", default=EQUIVALENT, metavar="FILE",
                        help="survivors' one-line equivalence reasons (JSON list of path/from/to/reason)")
    args = parser.parse_args(argv)
    targets = dict(parse_target(spec) for spec in args.target) or TARGETS
    names = [n for n in args.only.split(",") if n] or list(targets)
    unknown = sorted(set(names) - set(targets))
    if unknown:
        raise SystemExit(f"mutation: --only: unknown target(s) {', '.join(unknown)}; "
                         f"known: {', '.join(targets)}")
    kept = recorded(args.record)
    digests = {name: sources_digest(args.project, *targets[name]) for name in names}
    current = {name for name in names if kept.get(name, {}).get("sources_sha256") == digests[name]}
    tree = os.path.join(args.workdir, "tree")
    restore_interrupted(tree, [path for path, _ in targets.values()])
    if not args.report:
        if shutil.which("mutmut") is None:
            raise SystemExit("mutation: mutmut is not installed: pip install -e '.[mutation]'")
        os.makedirs(tree, exist_ok=True)
        copy_tree(args.project, tree)
        seed_cache(tree, args.cache)
        for name in names:
            if name not in current:
                run_target(tree, *targets[name])
                if args.cache:
                    export_cache(tree, args.cache)
    by_file = judged(tree) if set(names) - current else {}
    reasons = equivalence_reasons(args.equivalent)
    results = {}
    for name in names:
        path, tests = targets[name]
        if name in current and not by_file.get(path):
            results[name] = kept[name]
            continue
        results[name] = {"path": path, "tests": tests, "sources_sha256": digests[name],
                         **summary(path, by_file.get(path, []), reasons)}
    if args.record and not args.report:
        finished = {n: r for n, r in results.items() if r["tried"] and not r["untested"]}
        write_json(args.record, {"targets": {**kept, **finished}})
    print(json.dumps({"workdir": args.workdir, "targets": results}, indent=1))


def write_json(path: str, value: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
