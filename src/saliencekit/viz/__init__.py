"""saliencekit.viz"""
