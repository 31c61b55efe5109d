"""Every rendering constant, in one place (values and semantics of 3DGS / gsplat).

tests/test_renderer.py has one test per constant that shows its effect.
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
# Gaussians are truncated at this many standard deviations (Mahalanobis distance).
SIGMA_EXTENT = 3.0
# Default background colour (RGB) composited where transmittance remains.
BACKGROUND = (0.0, 0.0, 0.0)
