// The portable path's fused kernels on CUDA (src/ops/fused.rs has the same maths on the CPU,
// and `deepdream check-kernels --device cuda` compares the two). One thread per output value,
// float32, contiguous NCHW tensors. act: 0 identity, 1 ReLU, 2 ReLU6.

__device__ __forceinline__ float activate(float v, int act) {
    if (act == 1) return v > 0.f ? v : 0.f;
    if (act == 2) return fminf(fmaxf(v, 0.f), 6.f);
    return v;
}

// The activation's derivative read off its output y.
__device__ __forceinline__ float mask(float y, int act) {
    if (act == 1) return y > 0.f ? 1.f : 0.f;
    if (act == 2) return (y > 0.f && y < 6.f) ? 1.f : 0.f;
    return 1.f;
}

// y[n,c,oy,ox] = act(bias[c] + sum_k x[n,c,oy*s-pt+ky,ox*s-pl+kx] w[c,ky,kx]), zero outside.
extern "C" __global__ void dd_depthwise_fwd(
    const float* x, const float* w, const float* bias, float* y,
    int nc, int c, int h, int wd, int oh, int ow, int kh, int kw, int s, int pt, int pl, int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)nc * oh * ow;
    if (i >= total) return;
    int ox = i % ow;
    int oy = (i / ow) % oh;
    long long p = i / ((long long)oh * ow);
    int ch = p % c;
    const float* xp = x + p * (long long)h * wd;
    const float* wc = w + (long long)ch * kh * kw;
    float acc = bias[ch];
    for (int ky = 0; ky < kh; ky++) {
        int iy = oy * s - pt + ky;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < kw; kx++) {
            int ix = ox * s - pl + kx;
            if (ix < 0 || ix >= wd) continue;
            acc += xp[(long long)iy * wd + ix] * wc[ky * kw + kx];
        }
    }
    y[i] = activate(acc, act);
}

// gx[n,c,iy,ix] = sum over taps whose output (oy,ox) reads (iy,ix): gy*mask(y) at (oy,ox) times w.
extern "C" __global__ void dd_depthwise_bwd(
    const float* gy, const float* y, const float* w, float* gx,
    int nc, int c, int h, int wd, int oh, int ow, int kh, int kw, int s, int pt, int pl, int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)nc * h * wd;
    if (i >= total) return;
    int ix = i % wd;
    int iy = (i / wd) % h;
    long long p = i / ((long long)h * wd);
    int ch = p % c;
    const float* gp = gy + p * (long long)oh * ow;
    const float* yp = y + p * (long long)oh * ow;
    const float* wc = w + (long long)ch * kh * kw;
    float acc = 0.f;
    for (int ky = 0; ky < kh; ky++) {
        int ny = iy + pt - ky;
        if (ny < 0 || ny % s != 0) continue;
        int oy = ny / s;
        if (oy >= oh) continue;
        for (int kx = 0; kx < kw; kx++) {
            int nx = ix + pl - kx;
            if (nx < 0 || nx % s != 0) continue;
            int ox = nx / s;
            if (ox >= ow) continue;
            long long o = (long long)oy * ow + ox;
            acc += gp[o] * mask(yp[o], act) * wc[ky * kw + kx];
        }
    }
    gx[i] = acc;
}

// y = act(x + bias[c]) for x [n, c, hw].
extern "C" __global__ void dd_bias_act(const float* x, const float* bias, float* y, long long total, int c, int hw, int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int ch = (i / hw) % c;
    y[i] = activate(x[i] + bias[ch], act);
}

// g = gy * mask(y).
extern "C" __global__ void dd_act_mask(const float* gy, const float* y, float* g, long long total, int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    g[i] = gy[i] * mask(y[i], act);
}

// The first maximum, in scan order, of the window of output (oy, ox): its flat input index, or
// -1 if the window holds no input pixel. Window rows oy*sh - pt + ky, columns alike.
__device__ __forceinline__ int window_argmax(const float* xp, int h, int wd, int oy, int ox,
                                             int kh, int kw, int sh, int sw, int pt, int pl) {
    int best = -1;
    float m = 0.f;
    for (int ky = 0; ky < kh; ky++) {
        int iy = oy * sh - pt + ky;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < kw; kx++) {
            int ix = ox * sw - pl + kx;
            if (ix < 0 || ix >= wd) continue;
            float v = xp[iy * wd + ix];
            if (best < 0 || v > m) { best = iy * wd + ix; m = v; }
        }
    }
    return best;
}

// Max-pool input gradient, gathered per input pixel: the sum, over the outputs (in scan order)
// whose window's first maximum is this pixel, of their gradient.
extern "C" __global__ void dd_maxpool_bwd(
    const float* gy, const float* x, float* gx,
    int nc, int h, int wd, int oh, int ow, int kh, int kw, int sh, int sw, int pt, int pl) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)nc * h * wd;
    if (i >= total) return;
    int ix = i % wd;
    int iy = (i / wd) % h;
    long long p = i / ((long long)h * wd);
    const float* xp = x + p * (long long)h * wd;
    const float* gp = gy + p * (long long)oh * ow;
    int self = iy * wd + ix;
    // Outputs whose window holds (iy, ix): oy*sh - pt <= iy <= oy*sh - pt + kh - 1.
    int oy0 = iy + pt - kh + 1; oy0 = oy0 <= 0 ? 0 : (oy0 + sh - 1) / sh;
    int ox0 = ix + pl - kw + 1; ox0 = ox0 <= 0 ? 0 : (ox0 + sw - 1) / sw;
    float acc = 0.f;
    for (int oy = oy0; oy < oh && oy * sh - pt <= iy; oy++) {
        for (int ox = ox0; ox < ow && ox * sw - pl <= ix; ox++) {
            if (window_argmax(xp, h, wd, oy, ox, kh, kw, sh, sw, pt, pl) == self) acc += gp[oy * ow + ox];
        }
    }
    gx[i] = acc;
}
