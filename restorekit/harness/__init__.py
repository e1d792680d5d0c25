"""The evaluation harness behind ``restorekit compare``.

- :mod:`.inputs`: the LR/HR pairs every method sees (made once, cached under ``--out``).
- :mod:`.runner`: planning (all usage errors up front) and execution (per-image failures recorded,
  warm-up excluded from timing, peak memory, resumable store).
- :mod:`.metrics`: the core metrics (PSNR/SSIM on BT.601 Y with border crop, RGB variants,
  PULSE's LR-consistency), each named after its convention.
- :mod:`.aggregate`: per-method means (± std over seeds for stochastic methods), NaN counts, best per column.
- :mod:`.paired`: ``--baseline``'s head-to-head statistics per method and metric (win share, mean
  paired difference with a 95% CI — Student's t below 30 differences, else a bootstrap —, exact sign test).
- :mod:`.store`: the per-(method, image, seed) JSON-lines store that makes runs resumable.
- :mod:`.reports`: what compare writes (:func:`~.reports.write_all`); each output in its own module:
  :mod:`.report_console` (terminal tables), :mod:`.report_files` (CSV, JSON), :mod:`.report_html`,
  on the shared :mod:`.report_summary` and :mod:`.report_text`.
- :mod:`.bench`: ``restorekit bench harness``, the harness's own overhead.
- :mod:`.bench_scaleout`: ``restorekit bench scaleout``, images per second under ``torchrun``, N
  processes against one (:mod:`restorekit.sharding` shares ``compare`` out between them).
"""
