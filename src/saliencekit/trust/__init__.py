"""saliencekit.trust"""
