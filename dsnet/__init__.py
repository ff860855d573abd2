"""dsnet: train and benchmark standard vs depthwise-separable convolution backbones."""

__version__ = "0.1.0"
