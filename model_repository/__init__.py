"""Sources of the Triton model repository: `dcam-build` copies these templates into each build.

Generated repositories (written with `dcam-build engines --out model_repository/NAME`) are
git-ignored; only this package and its templates are committed.
"""
