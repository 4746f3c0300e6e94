"""saliencekit.models"""
