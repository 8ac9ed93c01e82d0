"""One module per kind of dataset :func:`pilot.data.hf.open_dataset` reads: ``save_to_disk`` folders, parquet files,
imagefolders and Hub ids; :mod:`~pilot.data.readers.common` holds what they share."""
