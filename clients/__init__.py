"""ClientApps: thin Flower glue that unpacks a task, calls the library, packs the reply."""
