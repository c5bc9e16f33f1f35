"""The GPU check and the benchmark code it shares with tools/ (tools/bench_*.py are thin wrappers).

    gpu_check     the one-command check: collectives, train ratio, stage 1 / stage 0, embed, k-means
    gpu_report    its targets, verdicts and table
    kmeans_check  k-means ours vs faiss in a process of its own
    memprobe      peak memory of a part (in process, or polled for child processes)
    devtime       timing a call between device syncs
    train_bench   stage-0 samples/s: ours vs open_clip_train (torchrun launches and shims)
"""
