# Installs apo::apo with its headers and an exported CMake package, so that an application outside
# the tree builds with find_package(apo CONFIG REQUIRED) and links apo::apo.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(APO_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/apo")

set(apo_installed_targets apo)
if(APO_BUILD_CLI)
  list(APPEND apo_installed_targets apo_cli)
endif()
install(TARGETS ${apo_installed_targets}
  EXPORT apoTargets
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}"
  FILE_SET HEADERS DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")

install(EXPORT apoTargets
  NAMESPACE apo::
  DESTINATION "${APO_INSTALL_CMAKEDIR}")

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/apoConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/apoConfig.cmake"
  INSTALL_DESTINATION "${APO_INSTALL_CMAKEDIR}")
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/apoConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/apoConfig.cmake"
  "${PROJECT_BINARY_DIR}/apoConfigVersion.cmake"
  DESTINATION "${APO_INSTALL_CMAKEDIR}")
