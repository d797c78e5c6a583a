// All of hpdl::optim in one include: optimizers, clipping, schedules, loss scaling.
#pragma once

#include "hpdl/optim/factory.h"
#include "hpdl/optim/grad_scaler.h"
#include "hpdl/optim/optimizer.h"
#include "hpdl/optim/optimizers.h"
#include "hpdl/optim/schedule.h"
