// Channel statistics of a tensor and the combination of per-chunk partials (channel_stats.cuh).
#include "cuda/channel_stats.cuh"

namespace hdkd::cuda {

ChannelStats combine_channel_stats(const Tensor& partial, int64_t chunks, int64_t B, int64_t C) {
  const int64_t m = B * C;
  const float* ps = partial.data_ptr<float>();
  const float *pm = ps + chunks * m, *pt = pm + chunks * m;
  const auto f32 = partial.options();
  ChannelStats out{at::empty({B, C}, f32), at::empty({B, C}, f32), at::empty({B, C}, f32)};
  float *os = out.sum.data_ptr<float>(), *om = out.max.data_ptr<float>();
  float* ot = out.ties.data_ptr<float>();
  for_each_index(m, [=] HDKD_HOST_DEVICE(int64_t j) {
    SumMaxTies s;
    for (int64_t i = j; i < chunks * m; i += m) s = SumMaxTies::merge(s, {ps[i], pm[i], pt[i]});
    os[j] = s.sum;
    om[j] = s.max;
    ot[j] = s.ties;
  });
  return out;
}

namespace {

// The values of one (b, c) plane of a tensor, as channel_stats_of reads them.
template <typename scalar_t>
struct PlaneValues {
  const scalar_t* plane;
  int64_t sh, sw;
  HDKD_HOST_DEVICE float operator()(int64_t, int64_t y, int64_t x) const {
    return static_cast<float>(plane[y * sh + x * sw]);
  }
};

}  // namespace

ChannelStats channel_stats(const Tensor& t) {
  const Layout l = layout_of(t);
  ChannelStats out;
  HDKD_DISPATCH(t.scalar_type(), "hdkd_channel_stats", [&] {
    const scalar_t* src = t.data_ptr<scalar_t>();
    out = channel_stats_of(l.B, l.C, l.H, l.W, [=] HDKD_HOST_DEVICE(int64_t b, int64_t c) {
      return PlaneValues<scalar_t>{src + b * l.sb + c * l.sc, l.sh, l.sw};
    }, t);
  });
  return out;
}

}  // namespace hdkd::cuda
