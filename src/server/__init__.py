"""gunicorn specifics, in one place: the keep-alive worker class and the lean access logger.

gunicorn.conf.py names them; nothing else in the project imports gunicorn.
"""
