"""saliencekit.train"""
