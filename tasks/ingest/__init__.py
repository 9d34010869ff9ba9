"""The ingest stage: a source of image-caption pairs in, `data/ingested/` out (tasks/common/ingested.py).

stage.py runs it; sources.py and source_roots.py read the user's conventions, decode.py and
preprocess.py turn one item into pixels, synthetic.py draws the built-in set. (Nothing is imported here:
decode workers import preprocess.py alone and stay light.)
"""
