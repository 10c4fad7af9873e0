"""Batch scoring: whole files or folders (local or ``s3://``) scored as the service scores one applicant.

Memory stays flat whatever the input size: the input is streamed in chunks of
``batch.chunk_rows`` rows (inputs), each chunk is validated, encoded as a whole and
scored with one booster call (chunk), and appended to the output with an incremental
ParquetWriter (engine_pandas); ``--engine dask`` runs the same chunk function over a
``dask.dataframe`` on a cluster (engine_dask). Counts always reconcile: rows in =
scored + rejected. The CLI is ``python -m src.batch`` (``__main__``); run ties them together.
"""
