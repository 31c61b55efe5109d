"""Every rendering constant, in one place (values and semantics of 3DGS / gsplat).

tests/test_renderer.py has one test per constant that shows its effect.

Per pixel, Gaussians are taken front to back (increasing camera z; ties by index) with
transmittance T = 1 at the start, and each goes through the checks of the official 3DGS CUDA
forward kernel (diff-gaussian-rasterization, renderCUDA), in its order:

1. power = -0.5 d^T Sigma2d^-1 d, d = pixel centre - mean. 3DGS skips power > 0, impossible
   for the positive-definite conic here; this renderer also skips d beyond SIGMA_EXTENT
   sigmas (power < -SIGMA_EXTENT^2 / 2), see SIGMA_EXTENT.
2. alpha = min(ALPHA_MAX, opacity * exp(power)).
3. alpha < ALPHA_MIN: skip this Gaussian; the pixel goes on.
4. test_T = T * (1 - alpha); if test_T < TRANSMITTANCE_MIN the pixel is done: this Gaussian
   and every one after it are NOT included.
5. colour += alpha * T * c, depth += alpha * T * z; T = test_T.

At the end colour += T * background, alpha = 1 - T.
"""

# Side of the square screen tiles, in pixels; each tile gets its own depth-sorted Gaussian list.
TILE_SIZE = 16
# Pixel (x, y) is evaluated at (x + 0.5, y + 0.5): pixel edges sit on integer coordinates.
PIXEL_CENTER = 0.5
# Upper clamp on a single Gaussian's alpha, so no Gaussian is perfectly opaque.
ALPHA_MAX = 0.99
# Contributions with alpha below 1/255 are skipped (invisible in 8-bit output).
ALPHA_MIN = 1.0 / 255.0
# A pixel stops once including the next Gaussian would take its transmittance below this.
TRANSMITTANCE_MIN = 1e-4
# Low-pass filter added to the diagonal of every 2D covariance (pixels^2): at least ~1 px wide.
EPS2D = 0.3
# Gaussians whose camera-space z is below this are culled (behind or too close to the camera).
NEAR_PLANE = 0.01
# Gaussians are truncated at this many standard deviations (Mahalanobis distance): pixels
# farther away get nothing, and the radius / tile box is SIGMA_EXTENT * sqrt(eigenvalue). 3DGS
# truncates at tile granularity instead (tails up to ~3.3 sigma leak into the tiles the box
# touches); truncating per pixel makes the image independent of TILE_SIZE.
SIGMA_EXTENT = 3.0
# Default background colour (RGB) composited where transmittance remains.
BACKGROUND = (0.0, 0.0, 0.0)
