"""One way to load a model and score a row, with no web framework in it.

model_store resolves and loads the champion (and hot-swaps it); scorer turns applicant
rows into probabilities, decisions and reasons; predlog is the durable prediction log.
The service (flask_api), batch scoring (src.batch) and monitoring (src.monitoring) all
build on these.
"""
