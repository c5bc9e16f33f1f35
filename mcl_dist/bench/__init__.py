"""The GPU checks and the benchmark code they share with tools/ (tools/bench_*.py are thin wrappers).

    gpu_check     the one-command check: collectives, train ratio, stage 1 / stage 0, embed, k-means
    gpu_report    its targets, verdicts and table
    kmeans_check  k-means ours vs faiss in a process of its own
    memprobe      peak memory of a part (in process, or polled for child processes)
    devtime       timing a call between device syncs
    train_bench   stage-0 samples/s: ours vs open_clip_train (torchrun launches and shims)
    warm_launch   one-process pipeline runs forked from a process that imported the entry point once

    paper_check   the GPU script: the paper's run measured on one GPU (paper_table: its table)
    throughput    the one throughput method: alternating rounds, window rate, data-wait share, ceiling
    flops         FLOPs per sample of what runs (locked layers forward only), for MFU
    jpeg_shards   photo-like JPEG shards in img2dataset's layout
    loader_rate   the loader's decode + transform samples/s per core
    kmeans_scale  k-means at scale on the pipeline's path vs faiss from the same init
"""
