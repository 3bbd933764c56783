"""Server-side tasks of the MONAI Label app for the GRU-Net nuclei bundle.

Modules: ``transforms`` (region loading, nucleus polygons), ``infers`` (mask and polygon infer tasks),
``trainers`` (bundle training with a MONAI Label overlay config), ``strategies`` (GdAM uncertainty ranking).
"""
