// The alpha-beta scaling model: the formulas at hand-computed points.
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/core/error.h"
#include "hpdl/dist/scaling.h"

namespace hpdl::dist {
namespace {

TEST(ScalingModel, RingAllreduceFormula) {
  Interconnect net{"test", 2e-6, 10e9, ""};
  EXPECT_EQ(ring_allreduce_seconds(1, 1e8, net), 0.0);
  // p = 4, n = 100 MB: 2*3*2us + 2*3/4 * 1e8 / 1e10 = 12us + 15 ms
  EXPECT_NEAR(ring_allreduce_seconds(4, 1e8, net), 12e-6 + 0.015, 1e-12);
}

TEST(ScalingModel, OverlapHidesCommunicationUpToBackward) {
  Interconnect net{"test", 0, 1e9, ""};
  StepProfile prof{0.01, 0.02, 0.001, 1e7, 128, 0.5};
  // p = 2: T_ar = 2*1/2*1e7/1e9 = 10 ms, hidden 0.5 * 20 ms = 10 ms: nothing exposed.
  auto p2 = predict(prof, net, 2, 60000);
  EXPECT_NEAR(p2.exposed_comm_s, 0.0, 1e-12);
  EXPECT_NEAR(p2.efficiency, 1.0, 1e-12);
  // p = 1024: T_ar ~ 2 * 1023/1024 * 10 ms = 19.98 ms; exposed 9.98 ms.
  auto p1024 = predict(prof, net, 1024, 60000);
  EXPECT_NEAR(p1024.exposed_comm_s, 2.0 * 1023 / 1024 * 0.01 - 0.01, 1e-9);
  EXPECT_LT(p1024.efficiency, 1.0);
  EXPECT_NEAR(p1024.epoch_s, std::ceil(60000.0 / (128 * 1024)) * p1024.step_s, 1e-12);
}

TEST(ScalingModel, UnknownPresetListsKnownOnes) {
  try {
    interconnect_preset("token-ring");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ib-hdr"), std::string::npos);
  }
}

}  // namespace
}  // namespace hpdl::dist
