"""reports/<profile>/ (README.md, summary.csv, figures/, images/) from the stage outputs under
reports/ alone. `build.build` is the entry the report stage calls; `tables` reads the metric files
into rows, `sections` and `curves`, `control`, `i2i` turn them into markdown (prose in
templates/), `plots` draws the report's figures, `images` copies the stage images it shows."""
