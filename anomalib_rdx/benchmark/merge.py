"""Merge the result folders of several benchmark runs into one, e.g. models run in parallel processes.

``python -m anomalib_rdx.benchmark`` runs its models one after another. On a machine with spare cores it
can be faster to run one model per process (each with its own ``--output``) and merge the folders
afterwards::

    python -m anomalib_rdx.benchmark.merge --output results/all results/RDExpert results/Patchcore

Each input folder's per-model sub-folders (test scores, learning curves, checkpoints) are copied into
``--output``; the merged ``results.json`` keeps every input's configuration and environment (threads and
CPU) so a reader sees how each row was measured, and the summary is recomputed.
"""

import argparse
import json
import shutil
from pathlib import Path

from .accuracy import write_document

__all__ = ["merge_results"]


def merge_results(inputs: list[Path], output: Path) -> dict:
    """Merge benchmark result folders into ``output``; return the merged ``results.json`` document.

    Raises:
        FileNotFoundError: an input folder has no ``results.json`` (names the folder).
        ValueError: two inputs hold the same model (their sub-folders would overwrite each other).
    """
    documents = []
    for folder in inputs:
        path = folder / "results.json"
        if not path.is_file():
            msg = f"{folder} has no results.json: is it a benchmark --output folder?"
            raise FileNotFoundError(msg)
        documents.append(json.loads(path.read_text()))
    models = [row["model"] for document in documents for row in document["results"]]
    repeated = sorted({name for name in models if models.count(name) > 1})
    if repeated:
        msg = f"models {repeated} appear in more than one input; merge runs of different models."
        raise ValueError(msg)
    output.mkdir(parents=True, exist_ok=True)
    for folder, document in zip(inputs, documents, strict=True):
        for name in dict.fromkeys(row["model"] for row in document["results"]):
            if (folder / name).is_dir() and folder.resolve() != output.resolve():
                shutil.copytree(folder / name, output / name, dirs_exist_ok=True)
    rows = [row for document in documents for row in document["results"]]
    merged = {
        "config": documents[0]["config"] | {"models": list(dict.fromkeys(models))},
        "environment": documents[0]["environment"],
        "merged_from": [
            {"folder": str(folder), "config": document["config"], "environment": document["environment"]}
            for folder, document in zip(inputs, documents, strict=True)
        ],
        "results": rows,
    }
    write_document(merged, output)
    return merged


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_rdx.benchmark.merge",
        description="Merge benchmark result folders (one model per folder, e.g. run in parallel) into one.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="benchmark --output folders")
    parser.add_argument("--output", type=Path, required=True, help="merged results folder")
    args = parser.parse_args(argv)
    try:
        merged = merge_results(args.inputs, args.output)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(f"{len(merged['results'])} rows from {len(args.inputs)} folders -> {args.output / 'results.json'}")


if __name__ == "__main__":
    main()
