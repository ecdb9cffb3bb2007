"""Animated 3D assets -> training samples: loaders, procedural objects, rendering, voxel features, datasets."""
