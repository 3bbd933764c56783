"""Reading images and slides, writing results."""
