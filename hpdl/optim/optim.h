// All of hpdl::optim in one include: optimizers, clipping, schedules.
#pragma once

#include "hpdl/optim/factory.h"
#include "hpdl/optim/optimizer.h"
#include "hpdl/optim/optimizers.h"
#include "hpdl/optim/schedule.h"
