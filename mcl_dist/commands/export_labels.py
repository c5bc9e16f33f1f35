"""Export a stage's pseudo-labels as CSV (`key,label`), e.g. for inspection in a spreadsheet.

    mcl-export-labels runs/demo/stage_2/labels.npz stage2_labels.csv
"""
import argparse
import sys

from mcl_dist.clustering.pseudo_labels import export_csv, label_stats, load_labels
from mcl_dist.core import layout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("labels", help=f"{layout.LABELS} written by the labels step")
    p.add_argument("out_csv", help="CSV file to write (atomic)")
    args = p.parse_args(argv)

    try:
        n = export_csv(args.labels, args.out_csv)
        stats = label_stats(load_labels(args.labels)["labels"])
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} rows to {args.out_csv}; {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
