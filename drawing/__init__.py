"""Pictures of images and of the diffusion process: sample grids, labelled tables and GIFs
(``pictures``), forward-noising strips and denoising frames, GIFs and strips (``process``), and
matplotlib charts of the loss, the schedules and log-SNR (``charts``).

Used by training (periodic samples), the figures, the CLI and the web app. Every function takes
uint8 images ``(N, H, W, 3)`` (or [-1, 1] tensors, converted with clamping), returns the picture
as a uint8 array, and writes it when given a path. Frame labels state the real model timestep.
Matplotlib figures are always closed after use.

This package draws what it is given; it never loads a model. A model's README figures
(sampling, then these drawings) are ``python diffusion.py figures`` (engine/figures.py); the
command line ``python plot_func.py`` draws a schedule plot and a forward strip of an image.
"""
from drawing.charts import log_snr_plot, loss_curve, schedule_plot
from drawing.pictures import (ImageBatch, as_uint8, frames_gif, labelled_grid, sample_grid, stack_pictures,
                              upscale_nearest, write_gif)
from drawing.process import (denoising_frames, denoising_gif, denoising_strip, forward_and_prediction_strip,
                             forward_diffusion_strip)

__all__ = [
    "ImageBatch", "as_uint8", "sample_grid", "write_gif", "upscale_nearest", "labelled_grid", "stack_pictures",
    "frames_gif", "forward_diffusion_strip", "denoising_frames", "denoising_gif", "denoising_strip",
    "forward_and_prediction_strip", "loss_curve", "schedule_plot", "log_snr_plot",
]
