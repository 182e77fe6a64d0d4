"""Controllable generation with PC samplers (Song et al. 2021, Sec. 5, App. I): inpainting,
colorization, and class-conditional sampling guided by a noise-conditional classifier. The known
part of x is replaced by a sample of its marginal at t after every predictor/corrector update."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from score_jax import parallel, sampling
from score_jax.models import utils as mutils
from score_jax.sde import batch_mul

# Orthogonal colour transform of the official code: decoupled channel 0 is the gray level
# (R + G + B) / sqrt(3); channels 1, 2 span the colour plane.
M = np.array([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
              [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
              [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]], np.float32)
INV_M = np.linalg.inv(M.astype(np.float64)).astype(np.float32)


def decouple(images):
    """RGB (..., 3) -> decoupled space (..., 3): `images @ M`; channel 0 carries the gray level."""
    return jnp.einsum("...i,ij->...j", images, M)


def couple(images):
    """Inverse of `decouple`: `images @ M^-1`."""
    return jnp.einsum("...i,ij->...j", images, INV_M)


def get_mask(images):
    """Mask of the known (gray) channel in decoupled space: ones on channel 0, zeros elsewhere."""
    return jnp.concatenate([jnp.ones_like(images[..., :1]), jnp.zeros_like(images[..., 1:])], -1)


def _score_fn(sde, model, variables, continuous, shape):
    score_fn = mutils.get_score_fn(sde, model, variables, train=False, continuous=continuous)
    sampling.check_model_shape(score_fn, shape)
    return score_fn


def _run(sde, score_fn, x, rng, project, predictor, corrector, snr, n_steps, probability_flow,
         eps):
    return sampling.pc_loop(
        sde, score_fn, x, jax.random.split(rng, sde.N),
        lambda key: sampling.normal_step_noise(key, x.shape, n_steps), predictor=predictor,
        corrector=corrector, snr=snr, n_steps=n_steps, probability_flow=probability_flow,
        eps=eps, project=project)


def get_pc_inpainter(sde, model, predictor, corrector, inverse_scaler, snr, n_steps=1,
                     probability_flow=False, continuous=False, denoise=True, eps=1e-5):
    """Jitted `(rng, variables, data, mask) -> samples`; `data` (B, H, W, C) scaled like the
    training data, `mask` broadcastable to it, 1 on known pixels. Arguments as `get_pc_sampler`."""
    sampling.check_pc_args(sde, predictor, corrector, probability_flow, n_steps)

    def inpainter(rng, variables, data, mask):
        data = jnp.asarray(data, jnp.float32)
        mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), data.shape)

        def project(x, x_mean, t, z):
            known_mean, std = sde.marginal_prob(data, t)
            known = known_mean + batch_mul(std, z)
            x = x * (1.0 - mask) + known * mask
            # x_mean keeps the noisy new x on the unknown part: `denoise` only denoises the
            # known part (the official samplers do the same).
            return x, x * (1.0 - mask) + known_mean * mask

        prior_key, loop_key = jax.random.split(rng)
        x = data * mask + sde.prior_sampling(prior_key, data.shape) * (1.0 - mask)
        score_fn = _score_fn(sde, model, variables, continuous, x.shape)
        x, x_mean = _run(sde, score_fn, x, loop_key, project, predictor, corrector, snr, n_steps,
                         probability_flow, eps)
        return inverse_scaler(x_mean if denoise else x)

    return jax.jit(inpainter)


def get_pc_colorizer(sde, model, predictor, corrector, inverse_scaler, snr, n_steps=1,
                     probability_flow=False, continuous=False, denoise=True, eps=1e-5):
    """Jitted `(rng, variables, gray_scale_img) -> samples`; `gray_scale_img` (B, H, W, 3) with
    R = G = B, scaled like the training data. Arguments as `sampling.get_pc_sampler`."""
    sampling.check_pc_args(sde, predictor, corrector, probability_flow, n_steps)

    def colorizer(rng, variables, gray_scale_img):
        gray = jnp.asarray(gray_scale_img, jnp.float32)
        if gray.shape[-1] != 3:
            raise ValueError(f"colorization needs RGB images (..., 3), got shape {gray.shape}")
        mask = get_mask(gray)
        gray_decoupled = decouple(gray)

        def project(x, x_mean, t, z):
            known_mean, std = sde.marginal_prob(gray_decoupled, t)
            known = known_mean + batch_mul(std, z)
            x = couple(decouple(x) * (1.0 - mask) + known * mask)
            return x, couple(decouple(x) * (1.0 - mask) + known_mean * mask)

        prior_key, loop_key = jax.random.split(rng)
        # As official: the prior draw is masked in RGB space, then decoupled.
        x = couple(gray_decoupled * mask
                   + decouple(sde.prior_sampling(prior_key, gray.shape) * (1.0 - mask)))
        score_fn = _score_fn(sde, model, variables, continuous, x.shape)
        x, x_mean = _run(sde, score_fn, x, loop_key, project, predictor, corrector, snr, n_steps,
                         probability_flow, eps)
        return inverse_scaler(x_mean if denoise else x)

    return jax.jit(colorizer)


def get_pc_conditional_sampler(sde, model, classifier, shape, predictor, corrector, inverse_scaler,
                               snr, n_steps=1, probability_flow=False, continuous=False,
                               denoise=True, eps=1e-3, scale=1.0,
                               sharding: NamedSharding | None = None):
    """Jitted `(rng, variables, classifier_variables, labels) -> (samples, nfe)`, labels int (B,).

    Every update uses score + scale * grad_x log p(labels | x, sigma(t)); otherwise as
    `sampling.get_pc_sampler` (same arguments, draws, nfe): `scale=0` gives its samples exactly."""
    shape = tuple(int(s) for s in shape)
    sampling.check_pc_args(sde, predictor, corrector, probability_flow, n_steps)
    parallel.check_sharding(shape, sharding)

    def sampler(rng, variables, classifier_variables, labels):
        labels = jnp.asarray(labels, jnp.int32)
        if labels.shape != shape[:1]:
            raise ValueError(f"labels has shape {labels.shape}, the sampler needs one label per "
                             f"sample: ({shape[0]},)")
        score_fn = _score_fn(sde, model, variables, continuous, shape)
        grad_fn = mutils.get_classifier_grad_fn(
            mutils.get_logit_fn(sde, classifier, classifier_variables))

        def conditional_score_fn(x, t):
            return score_fn(x, t) + scale * grad_fn(x, t, labels)

        prior_key, loop_key = jax.random.split(rng)
        x = parallel.constrain(sde.prior_sampling(prior_key, shape), sharding)
        x, x_mean = _run(sde, conditional_score_fn, x, loop_key, None, predictor, corrector, snr,
                         n_steps, probability_flow, eps)
        samples = parallel.constrain(inverse_scaler(x_mean if denoise else x), sharding)
        return samples, jnp.int32(sde.N * (n_steps + 1))

    return jax.jit(sampler)


def get_conditional_sampling_fn(config, sde, model, classifier_variables, shape, inverse_scaler,
                                eps, sharding: NamedSharding | None = None):
    """`(rng, variables) -> (samples, nfe)` of class `sampling.class_label`, guided by
    `config.classifier` (weight `classifier.scale`); raises unless `sampling.method` is 'pc'."""
    s = config.sampling
    if str(s.method).lower() != "pc":
        raise ValueError(f"sampling.method={s.method!r}: class-conditional sampling "
                         "(sampling.class_label) runs the PC sampler only; set sampling.method=pc")
    label = int(s.class_label)
    num_classes = int(config.classifier.num_classes)
    if not 0 <= label < num_classes:
        raise ValueError(f"sampling.class_label={label} is outside [0, classifier.num_classes="
                         f"{num_classes})")
    sampler = get_pc_conditional_sampler(
        sde, model, mutils.create_classifier(config), shape, s.predictor, s.corrector,
        inverse_scaler, s.snr, n_steps=s.n_steps_each, probability_flow=s.probability_flow,
        continuous=config.training.continuous, denoise=s.noise_removal, eps=eps,
        scale=float(config.classifier.scale), sharding=sharding)
    labels = jnp.full(shape[:1], label, jnp.int32)
    return lambda rng, variables: sampler(rng, variables, classifier_variables, labels)
