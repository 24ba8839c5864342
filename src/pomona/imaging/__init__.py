"""The one decode of an upload's bytes into the model's pixels (Pillow alone): validation accepts what it
decodes, and featurization and serving decode with it, so an accepted photo is a photo the job can featurize."""
