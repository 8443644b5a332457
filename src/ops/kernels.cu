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
