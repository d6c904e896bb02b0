"""``metric-sim export``: one folder for metric-sim, sentence-transformers, transformers and ONNX Runtime."""

from __future__ import annotations

import argparse

from metric_sim.cli.common import EXIT_OK, Subparsers, print_json
from metric_sim.layout import CONFIG_FILE
from metric_sim.storage import read_json


def add_export_parser(sub: Subparsers) -> None:
    export = sub.add_parser(
        "export",
        help="write one folder that metric-sim, sentence-transformers, transformers and ONNX Runtime load "
        "(image and title + image models: metric-sim and ONNX Runtime, with preprocessing.json)",
    )
    export.add_argument("source", help="run folder (RUN_DIR with model/), a model folder, or 'default'")
    export.add_argument("--out", required=True, help="folder to create (written under a temporary name, renamed at the end)")
    export.add_argument("--onnx", action="store_true", help="also write onnx/model.onnx (pooling or backbone, projection and normalisation inside the graph)")
    export.add_argument("--quantize", choices=["int8"], default=None, help="also write onnx/model_int8.onnx (implies --onnx; text models only)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default: %(default)s)")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    export.add_argument("--json", action="store_true", help="print the export's metric_sim.json")
    export.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from metric_sim.export import export_model

    out = export_model(args.source, args.out, onnx=args.onnx, quantize=args.quantize, opset=args.opset, overwrite=args.overwrite)
    config = read_json(out / CONFIG_FILE)
    if args.json:
        print_json(config)
        return EXIT_OK
    print(f"exported {args.source} -> {out}")
    encoder = config["encoder"]
    if encoder.get("kind") in ("image", "multimodal"):  # their settings (backbone, preprocessing) fill screens
        print(f"metric: {config['metric']}; encoder: {encoder['kind']}; preprocessing: {config['export']['preprocessing']}")
    else:
        print(f"metric: {config['metric']}; encoder: {encoder}")
    calibrator = config.get("calibrator")
    print(f"threshold: {calibrator['threshold']:.6g}" if calibrator else "calibrator: none")
    for kind, info in config["export"].get("onnx", {}).get("files", {}).items():
        print(f"onnx {kind}: {info['path']} ({info['bytes'] / 1e6:.1f} MB), max |onnx - torch| = {info['max_abs_diff_vs_torch']:.2e}")
    return EXIT_OK
