// All of hpdl::nn in one include: Module, layers, blocks, init.
#pragma once

#include "hpdl/nn/blocks.h"
#include "hpdl/nn/init.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/module.h"
#include "hpdl/nn/rnn.h"
#include "hpdl/nn/transformer.h"
