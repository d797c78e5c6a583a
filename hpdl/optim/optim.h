// All of hpdl::optim in one include: optimizers, clipping, schedules, loss scaling, weight averaging.
#pragma once

#include "hpdl/optim/ema.h"
#include "hpdl/optim/factory.h"
#include "hpdl/optim/grad_scaler.h"
#include "hpdl/optim/optimizer.h"
#include "hpdl/optim/optimizers.h"
#include "hpdl/optim/schedule.h"
