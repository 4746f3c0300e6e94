"""saliencekit.methods"""
