"""The paper's second half: the learned metric as a training loss.

``rankiq experiment denoise`` (a complex ResUNet removing complex Gaussian noise) and
``rankiq experiment recon`` (a model-based unrolled reconstruction of Poisson-disc undersampled
multi-coil k-space), each trained once per loss (IQ-Net with reference subtraction, MSE, SSIM;
EfficientNet with and without reference for denoising when such models exist), compared on a
held-out test set with paired t-tests. See docs/experiments.md.
"""
