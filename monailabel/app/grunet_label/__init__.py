"""Server-side tasks of the MONAI Label app for the GRU-Net nuclei bundle.

Modules: ``infers`` (mask and polygon infer tasks on the bundle's pipeline),
``trainers`` (bundle training with a MONAI Label overlay config), ``strategies`` (GdAM uncertainty ranking).
"""
