"""``python -m benchmarks``: how fast this project trains, loads data and samples on this machine.

One run measures, then prints a readable table and ONE line of JSON:

1. the fp32 GEMM peak (``torch.matmul`` and the oneDNN path), to turn tokens/s into MFU;
2. training tokens/s of :class:`LanguageModel` under ``pytorch_lightning.Trainer`` against a
   bare PyTorch loop (same net, batch, AdamW, clipping), the GRU of the same size, one
   profiled step of each, and the bare loop in fresh processes with the glibc malloc
   tuning (``rnnlm.utils.memory.keep_freed_memory``) on and off;
3. :class:`CorpusDataModule` setup time and peak RSS for 1/10/100 MB corpora (fresh
   processes), and the cost of assembling a batch against a training step;
4. sampling chars/s: 1 stream, 32 streams, beam 5, and re-running the whole prefix each step;
5. the lesson's training (one document per batch, one-hot, 64 units) against our default
   for the same wall time, scored in bits/char on the same held-out text.

``--quick`` takes 2-3 minutes, ``--tiny`` ~20 seconds (a smoke test on one thread with a
1x64 model; its numbers mean little).
Timings are medians of per-step times after warm-up steps; on a shared machine they still
move with the load, which the JSON records (``machine.loadavg_*``).
"""
