"""Small-scale regenerations of the SR-STE (Zhou et al. 2021) and LBC (Zhang et al. 2022) figures and tables.

``nmref figures`` (or ``python -m paper_figures.run_all``) runs them all; ``python -m paper_figures.fig2_sad``
runs one. Outputs (PNG, CSV, index.md) go to ``paper_figures/out/``; training runs are cached under
``paper_figures/cache/`` keyed by a hash of their full configuration.
"""

FIGURES = ("fig1_nm_illustration", "fig2_sad", "fig3_lambda", "fig4_accuracy", "fig5_lbc_removal",
           "fig6_lbc_schedule")
