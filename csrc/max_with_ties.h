// The running max of the channel statistics and channel pools, with the number of values tied at
// it, shared by the CPU and CUDA kernels. torch.amax's rules: a max's gradient is split evenly
// among the values tied at it, and a NaN makes the max NaN.
#pragma once

#include "host_device.h"

namespace hdkd {

// Folds a value (v_ties = 1) or a partial result (its max and ties) into the running max / ties.
HDKD_HOST_DEVICE inline void max_with_ties(float v_max, float v_ties, float& max, float& ties) {
  if (v_max > max || v_max != v_max) {  // a larger value, or NaN (which then sticks)
    max = v_max;
    ties = v_ties;
  } else if (v_max == max) {
    ties += v_ties;
  }
}

}  // namespace hdkd
