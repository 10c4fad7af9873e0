"""One way to load a model and score a row, with no web framework in it.

model_store resolves and loads the champion (and hot-swaps it); scorer turns applicant
rows into probabilities, decisions and reasons (single_row: LightGBM's one-row fast path);
predlog is the prediction log: spool puts every answer on local disk before it leaves,
shipper copies the spool into the database (logdb: its tables and INSERT).
The service (flask_api), batch scoring (src.batch) and monitoring (src.monitoring) all
build on these.
"""
