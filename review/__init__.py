"""dcam.review: the review station (`dcam-review`). Operators judge scored parts in a browser;
their labels, kept in SQLite beside the results, re-fit each product's threshold, applied as a
new calibration version of the served model. Never imports torch."""
