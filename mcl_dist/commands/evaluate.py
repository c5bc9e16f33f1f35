"""Evaluate one stage checkpoint or an integrated model, the same way the pipeline does.

    mcl-evaluate --model runs/demo/integrated/model.pt --mmvp /data/MMVP_VLM --out res.json
    mcl-evaluate --model runs/demo/stage_0/checkpoint.pt \\
        --zero-shot-folder /data/imagenet/val --classnames classes.txt --out res.json
    mcl-evaluate --model ck.pt --zs-webdataset "test/{0..1}.tar" --label-field color \\
        --probe-train "train/{0..7}.tar" --probe-test "test/{0..1}.tar" --out res.json

--zs-webdataset and --probe-test are usually the same labelled shards; both are embedded once.
Exit status 2 for bad arguments or unreadable inputs.
"""
import argparse
import logging
import sys

import torch

from mcl_dist.config.schema import ConfigError
from mcl_dist.core.files import write_json
from mcl_dist.eval.run_metrics import CLS, evaluate_loaded, load_classnames
from mcl_dist.integration.integrated_model import load_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="stage checkpoint or integrated model file")
    p.add_argument("--model-name", default=None, help="open_clip architecture of a plain open_clip checkpoint")
    p.add_argument("--zero-shot-folder", default=None, help="image folder root/<class>/*.png|jpg")
    p.add_argument("--classnames", default=None,
                   help="class names: text file (one per line) or JSON list / {classnames, templates}")
    p.add_argument("--templates", default=None, help="text file of prompt templates, '{}' = class name")
    p.add_argument("--zs-webdataset", default=None, help="labelled shards for zero-shot ('::'-separated braces)")
    p.add_argument("--label-field", action="append", default=None,
                   help="json field holding the label (repeatable); default: the .cls member")
    p.add_argument("--mmvp", default=None, help="MMVP-VLM folder (Questions.csv + image folders)")
    p.add_argument("--probe-train", default=None, help="labelled shards to fit the linear probe on")
    p.add_argument("--probe-test", default=None, help="labelled shards to test the probe on")
    p.add_argument("--probe-max-samples", type=int, default=None, help="cap on probe training samples")
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", required=True, help="results JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


    if args.zs_webdataset and args.probe_test and args.zs_webdataset != args.probe_test:
        p.error("--zs-webdataset and --probe-test name different shards; evaluate them in two runs")
    if args.probe_train and not args.probe_test and not args.zs_webdataset:
        p.error("--probe-train needs --probe-test (or --zs-webdataset) to test on")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        names, templates = load_classnames(args.classnames) if args.classnames else (None, None)
        if args.templates:
            with open(args.templates) as f:
                templates = [line.rstrip("\n") for line in f if line.strip()]
        fields = args.label_field or [CLS]
        test = args.zs_webdataset or args.probe_test
        # with one field, --classnames names its classes (for string labels in a json field)
        zsc = {fields[0]: {"classnames": names, "templates": templates}} if names and len(fields) == 1 else {}
        model, preprocess, tokenizer = load_model(args.model, device=device, model_name=args.model_name)
        res = evaluate_loaded(model, preprocess, tokenizer, device=device, batch_size=args.batch_size,
                              test_urls=test, train_urls=args.probe_train, label_fields=fields if test else [],
                              zero_shot_classes=zsc, probe_max_samples=args.probe_max_samples,
                              zs_folder=args.zero_shot_folder, zs_classnames=names, zs_templates=templates,
                              mmvp_dir=args.mmvp, knn_k=args.knn_k)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.zs_webdataset is None and args.probe_test:
        res["zero_shot"] = {k: v for k, v in res["zero_shot"].items() if k not in fields}  # probe-only request
    res["model"] = args.model
    write_json(res, args.out)
    for line in res["notes"]:
        logging.info("note: %s", line)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
