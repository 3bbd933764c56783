"""The nucleus pipeline: check -> predict -> split -> measure, composed by the segmenter."""
